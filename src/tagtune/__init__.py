"""tagtune: teach IndexTTS 1.0/1.5 new expressive tags."""

__version__ = "0.1.0"
