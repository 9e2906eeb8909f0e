"""The ``ssot-auth`` subcommands, one module each."""
