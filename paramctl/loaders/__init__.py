"""Built-in loaders, one module per format. Each exposes a module-level `LOADER` (see paramctl.registry)."""
