"""Sendense engine: repositories, chains, copies, locks and restores.

Nothing in this package may import Textual; the console lives in sendense_tui.
"""

__version__ = "0.1.0"
