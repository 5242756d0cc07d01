"""Model adapters behind the protocols in grand.models.base; build them with grand.models.registry.build_model."""
