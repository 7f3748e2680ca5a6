"""The application: configuration, the `callrec` command line, wiring, MQTT events."""
