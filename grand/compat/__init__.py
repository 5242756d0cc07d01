"""Environment shims. Nothing here changes behaviour where the installed packages work as intended."""
