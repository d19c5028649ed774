"""The compliance and fraud gate run before every auction (TCPA, DNC, consent, STIR/SHAKEN)."""
