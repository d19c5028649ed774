"""Settings and the declarative config file (SPEC.md "Settings")."""
