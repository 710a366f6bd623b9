"""The application: wires stages to the engine and provides the ``campaignctl`` command."""
