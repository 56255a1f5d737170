"""The evaluation protocols a recipe lists (``Recipe.evaluations`` / ``ablations``): one typed part each."""
from .base import Protocol
from .kimia_eta import KimiaEta
from .label_fraction import LabelFraction
from .probes import ClassificationProbes
from .resplit import ResplitKnn
from .retrieval import Retrieval, RetrievalSplitVariants

__all__ = ["Protocol", "Retrieval", "RetrievalSplitVariants", "ClassificationProbes", "ResplitKnn", "LabelFraction",
           "KimiaEta"]
