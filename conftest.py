"""Doctest collection of the package: modules of optional integrations need their framework."""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("lightning") else ["gradwise/integrations/lightning.py"]
