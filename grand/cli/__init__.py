"""Commands: `grand run`, `grand status`, `grand models`, `grand demo` (grand.cli.main)."""
