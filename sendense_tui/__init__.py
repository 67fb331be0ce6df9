"""The Sendense console (Textual) and the ``sendense`` command."""
