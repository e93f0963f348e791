"""Sinks and callbacks for frameworks: each module imports its framework at the top, and
none is imported by ``import gradwise`` (``gradwise.integrations.lightning`` needs
``lightning``)."""
