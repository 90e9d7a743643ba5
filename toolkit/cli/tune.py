"""stub"""

def tune_cmd() -> None:
    """Stub."""
