"""promptlab: what prompt engineering, soft prompt tuning and full fine-tuning buy, and what they cost."""

__version__ = "0.1.0"
