"""Stage implementations behind the notebooks: each notebook opens a context and calls one ``run`` here."""
from .context import StageContext, open_stage

__all__ = ["StageContext", "open_stage"]
