"""A recipe is data: which datasets, which models, which training runs, which evaluations and which tables a paper
reproduces, per profile. The stage notebooks are the same for every paper and do what the recipe lists.

Profiles scale a recipe without changing its method: ``full`` = the paper's datasets and hyper-parameters on a GPU,
written as data; ``smoke`` = :func:`derive` of it with the bundled real tiles, small images, one or two epochs, CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


WEIGHT_KINDS = ("random", "timm", "train", "checkpoint", "encoder")  # encoder:SPEC = a user's (models.encoder_spec)


def weight_sources(spec: str, dataset: str = "") -> list[tuple[str, str]]:
    """Parse a weights / init spec into its alternatives, first available wins.

    ``"checkpoint:esvit_swin_tiny|train:esvit_pretrain"`` -> [("checkpoint", "esvit_swin_tiny"), ("train", "esvit_pretrain")];
    ``{dataset}`` is replaced by the dataset key (per-dataset training runs).
    """
    out = []
    for part in spec.format(dataset=dataset).split("|"):
        kind, _, value = part.partition(":")
        out.append((kind.strip(), value.strip()))
    return out


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset as the paper names it (``key``), read through a manifest (``dataset``)."""
    key: str
    dataset: str
    split: str = "random"                  # random = stratified 80/10/10 with the run's seed; group; official;
    #                                        none = every image is a training image (no val, no test part)
    train_splits: tuple = ()               # official: the split names training reads (default: train / all folds
    #                                        but the last), e.g. ("fold1",) as PathML's PanNukeDataModule(split=1)
    val_fraction: float = 0.1              # official: share of the training part held out as val when there is
    #                                        no official val set; 0 = training reads all of it (val is empty)
    test_dataset: Optional[str] = None     # a separate official test set (e.g. CRC-VAL-HE-7K)
    stand_in_for: Optional[str] = None     # smoke: the paper's dataset these tiles stand in for
    merges: tuple = ()                     # protocol class merges, e.g. (("MUS", "STR"),)
    stain: Optional[str] = None            # "macenko": the kit normalizes every tile (CRC "w/ norm" stand-in)
    task: str = "classification"           # classification | regression (BreastPathQ cellularity)
    image_size: Optional[int] = None       # evaluation input size of this dataset's tiles; None = the recipe's


@dataclass(frozen=True)
class TrainSpec:
    """One training run: self-supervised pretraining / adaptation (``method``) or supervised fine-tuning."""
    name: str
    method: str                            # esvit | dino | ibot | moco | simclr | mae | supervised
    encoder: str                           # histokit.models.backbones name
    dataset: str                           # DatasetSpec.key whose *train* split is used
    init: str = "random"                   # random | timm (hub weights) | train:<name> | checkpoint:<parameter>
    epochs: int = 100
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.0
    weight_decay_end: Optional[float] = None  # cosine weight-decay schedule to this value (DINO / iBOT: 0.04 -> 0.4)
    grad_clip: Optional[float] = None      # max gradient norm (DINO / iBOT --clip_grad 3.0)
    grad_clip_mode: str = "global"         # global (one norm) | per_param (DINO's utils.clip_gradients)
    betas: Optional[tuple] = None          # Adam(W) betas; None = torch's (0.9, 0.999); MAE: (0.9, 0.95)
    warmup_epochs: int = 5
    image_size: int = 224
    local_size: int = 96
    n_local: int = 8
    method_cfg: dict = field(default_factory=dict)
    encoder_kwargs: dict = field(default_factory=dict)   # e.g. CypherViT's num_final_cls (Table 4)
    mean: tuple = IMAGENET_MEAN            # input normalization the encoder is trained (and later used) with
    std: tuple = IMAGENET_STD


@dataclass(frozen=True)
class ModelSpec:
    """A row of a table: an encoder and where its weights come from."""
    name: str                              # the paper's row label, e.g. "EsViT + k-NN"
    encoder: str
    weights: str                           # timm | random | train:<TrainSpec.name> | checkpoint:<parameter>
    pooling: Optional[str] = None
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    note: str = ""
    encoder_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ProtocolPoint:
    """One line of a table's protocol card: what the paper (or its reference code) states, what the kit does.

    ``same`` is False where the two differ; ``variant`` names the kit's other implemented choice, if any (a
    reviewer sees both the deviation and how to run the alternative)."""
    aspect: str
    paper: str
    kit: str
    same: bool = True
    variant: str = ""

    def footnote(self) -> str:
        verdict = "as the paper" if self.same else "differs"
        text = f"Protocol — {self.aspect} ({verdict}): paper: {self.paper}; kit: {self.kit}"
        return text + (f"; variant: {self.variant}" if self.variant else "") + "."


@dataclass(frozen=True)
class TableSpec:
    """A table in the paper's layout: key columns, metric columns, and the paper's CSV for its numbers."""
    id: str
    title: str
    paper_csv: str
    keys: tuple                            # columns identifying a row, shared by the paper CSV and the records
    metrics: tuple                         # paper CSV metric columns, in order
    footnotes: tuple = ()
    not_reproducible: tuple = ()           # (row label, why): rows the kit cannot run (e.g. no public code)
    protocol: tuple = ()                   # ProtocolPoint: the table's protocol card, written as footnotes
    paper_device: str = ""                 # the device the paper names ("NVIDIA A100"): a record measured on a
    #                                        device (timings) gets a Δ only on that device class, never across
    extra_metrics: tuple = ()              # those of ``metrics`` the paper's table lacks (kit-only columns, e.g. a
                                           # paired t-test beside the paper's): no paper value, not in its CSV
    section: str = ""                      # where in the paper the table is, e.g. "Sec. III-A, Table I"; empty for
    #                                        a table the kit adds (a protocol variant); the notebooks' plan shows it

    @property
    def all_footnotes(self) -> tuple:
        """The footnotes, then the protocol card (paper vs kit, point by point)."""
        return tuple(self.footnotes) + tuple(p.footnote() for p in self.protocol)


@dataclass(frozen=True)
class Recipe:
    paper: str
    title: str
    citation: str
    profile: str
    image_size: int
    datasets: tuple
    models: tuple
    pretrain: tuple = ()
    finetune: tuple = ()
    evaluations: tuple = ()                # histokit.evaluation.protocols parts (Retrieval, ClassificationProbes ...)
    ablations: tuple = ()                  # the same, for stage 06
    tables: tuple = ()
    figures: tuple = ()                    # histokit.viz.figures parts (RetrievalGallery, UmapPanels ...)
    notes: tuple = ()
    extraction_batch_size: int = 64
    feature_l2_normalize: bool = True      # stored features L2-normalized (False: raw embeddings, Chen & Krishnan)
    exact_index_max: Optional[int] = None  # largest gallery searched exactly; above: FAISS IVF with its recall
    #                                        reported (None: histokit.retrieval.scale.EXACT_MAX_GALLERY, 1,000,000)

    def dataset(self, key: str) -> DatasetSpec:
        for spec in self.datasets:
            if spec.key == key:
                return spec
        raise KeyError(f"recipe {self.paper}/{self.profile} has no dataset {key!r}; it has "
                       f"{[d.key for d in self.datasets]}")

    def model(self, name: str) -> ModelSpec:
        for spec in self.models:
            if spec.name == name:
                return spec
        raise KeyError(f"recipe {self.paper}/{self.profile} has no model {name!r}")

    def train_spec(self, name: str) -> TrainSpec:
        for spec in self.pretrain + self.finetune:
            if spec.name == name:
                return spec
        raise KeyError(f"recipe {self.paper}/{self.profile} has no training run {name!r}")

    def table(self, table_id: str) -> TableSpec:
        for spec in self.tables:
            if spec.id == table_id:
                return spec
        raise KeyError(f"recipe {self.paper}/{self.profile} has no table {table_id!r}")

    def model_datasets(self, name: str) -> list[str]:
        """The dataset keys a model row is evaluated on (evaluations, ablations, figures); every key if none names
        it. A dataset only a training run reads (ImageNet for a pretraining) is no model's dataset."""
        used = [k for e in self.evaluations + self.ablations if name in e.models for k in e.datasets]
        used += [f.dataset for f in self.figures if name in f.model_rows()]
        return list(dict.fromkeys(used)) or [d.key for d in self.datasets]

    def replaced_runs(self, checkpoints) -> set:
        """Pretraining runs a given official checkpoint replaces (stage 02 skips them): a run some downstream weight
        spec lists after a ``checkpoint:NAME`` that ``checkpoints`` (NAME -> path) gives."""
        given = {name for name, path in dict(checkpoints or {}).items() if path}
        users = [(t.init, t.dataset) for t in self.finetune]
        users += [(m.weights, k) for m in self.models for k in self.model_datasets(m.name)]
        out = set()
        for run in self.pretrain:
            for spec, dataset in users:
                sources = weight_sources(spec, dataset)
                if ("train", run.name) in sources and any(
                        kind == "checkpoint" and value in given
                        for kind, value in sources[: sources.index(("train", run.name))]):
                    out.add(run.name)
        return out

    def datasets_needed(self, checkpoints=None) -> tuple:
        """The DatasetSpecs a run reads: every dataset but one that only pretraining runs replaced by a given
        checkpoint read (EsViT's ImageNet-1k fallback pretraining when ``--checkpoint esvit_swin_tiny`` is given)."""
        replaced = self.replaced_runs(checkpoints)
        keys = {k for m in self.models for k in self.model_datasets(m.name)}
        keys |= {k for e in self.evaluations + self.ablations for k in e.datasets}
        keys |= {t.dataset for t in self.pretrain + self.finetune if t.name not in replaced}
        return tuple(d for d in self.datasets if d.key in keys)

    def validate(self) -> "Recipe":
        """Every cross-reference resolves: a typo in a recipe fails before any work starts."""
        keys = {d.key for d in self.datasets}
        runs = {t.name for t in self.pretrain + self.finetune}

        def check_sources(owner: str, spec: str, dataset_keys) -> None:
            for key in dataset_keys:
                for kind, value in weight_sources(spec, key):
                    if kind not in WEIGHT_KINDS:
                        raise ValueError(f"{self.paper}: {owner} has unknown weight source {kind!r} in {spec!r}")
                    if kind == "train" and value not in runs:
                        raise ValueError(f"{self.paper}: {owner} uses weights of unknown run {value!r}")

        for t in self.pretrain + self.finetune:
            if t.dataset not in keys:
                raise ValueError(f"{self.paper}: training run {t.name!r} uses unknown dataset {t.dataset!r}")
            check_sources(f"training run {t.name!r}", t.init, [t.dataset])
        for m in self.models:
            check_sources(f"model {m.name!r}", m.weights, self.model_datasets(m.name))
        names = {m.name for m in self.models}
        tables = {t.id for t in self.tables}
        for e in self.evaluations + self.ablations:
            if not callable(getattr(e, "run", None)) or not hasattr(e, "check"):
                raise ValueError(f"{self.paper}: evaluation {e!r} is not a protocol (histokit.evaluation.protocols)")
            if e.table not in tables:
                raise ValueError(f"{self.paper}: evaluation {e.kind!r} writes to unknown table {e.table!r}")
            for n in e.models:
                if n not in names:
                    raise ValueError(f"{self.paper}: evaluation {e.kind!r} names unknown model {n!r}")
            for k in e.datasets:
                if k not in keys:
                    raise ValueError(f"{self.paper}: evaluation {e.kind!r} names unknown dataset {k!r}")
            e.check(self)   # the protocol's own fields (known AP normalisation, fractions in (0, 1], ...)
        for f in self.figures:
            if not callable(getattr(f, "run", None)) or not hasattr(f, "check"):
                raise ValueError(f"{self.paper}: figure {f!r} is not a figure part (histokit.viz.figures)")
            f.check(self)
        return self


def derive(full: Recipe, profile: str, *, encoders: Optional[dict] = None, train=None, table=None,
           **fields) -> Recipe:
    """``full`` under another ``profile``, by explicit overrides: ``fields`` replace the Recipe's own (datasets,
    notes, image_size, pretrain ...); then, over the result, ``encoders`` ({full name: smaller name}) renames the
    encoder of every training run and of every model but a hub-weight (``timm``) row (hub weights fit the full-size
    models only), ``train`` maps every TrainSpec and ``table`` every TableSpec."""
    rename = dict(encoders or {})
    same = lambda part: part   # noqa: E731
    train, table = train or same, table or same

    def renamed(part):
        return replace(part, encoder=rename.get(part.encoder, part.encoder))

    out = replace(full, profile=profile, **fields)
    return replace(out, pretrain=tuple(train(renamed(t)) for t in out.pretrain),
                   finetune=tuple(train(renamed(t)) for t in out.finetune),
                   models=tuple(m if m.weights == "timm" else renamed(m) for m in out.models),
                   tables=tuple(table(t) for t in out.tables))
