"""ontask: task-specific instruction-tuning data (TCIA augmentation, TSS/IFD scoring)."""

__version__ = "0.1.0"
