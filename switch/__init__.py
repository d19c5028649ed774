"""The SIP edge: a sans-IO RFC 3261 core (message, transaction, dialog, call), thin transports."""
