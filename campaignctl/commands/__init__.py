"""One module per group of ``campaignctl`` subcommands; each has ``register(subparsers)``."""
