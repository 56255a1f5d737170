"""histokit.viz: every figure renders to a real PNG atomically, shows what it claims, and rejects bad input by name.

UMAP's first call in a process pays numba's JIT compilation (~10-20 s on a busy 2-core box, out of our hands). No
test asserts a wall-clock time: on a machine shared with other jobs any bound is either loose enough to be useless
or tight enough to fail at random (`histokit speed` is where speed is measured).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image

from histokit.paths import BUNDLED_TILES_DIR
from histokit.viz import attention, curves, embeddings, gallery, grid, heatmap

UMAP_EPOCHS = 30  # a plot, not a metric: few epochs keep the tests fast


@pytest.fixture(scope="module")
def tiles():
    """The bundled Kather 2016 tiles: absolute paths, integer labels and class names in label order."""
    table = pd.read_csv(BUNDLED_TILES_DIR / "labels.csv")
    classes = table.drop_duplicates("label").sort_values("label")["class_name"].tolist()
    paths = [str(BUNDLED_TILES_DIR / p) for p in table["path"]]
    return SimpleNamespace(paths=paths, labels=table["label"].to_numpy(), classes=classes)


@pytest.fixture(autouse=True)
def no_pyplot_figures():
    """The viz functions build pyplot-free Figures: nothing may pile up in pyplot's global registry."""
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    yield
    leaked = set(plt.get_fignums()) - before
    plt.close("all")
    assert not leaked, f"figures left open in pyplot: {leaked}"


def assert_png(path, min_px=250, max_px=8000):
    """A complete, non-blank PNG of a sensible size, and no temp file left beside it."""
    assert path.is_file() and path.stat().st_size > 2000, f"{path} missing or tiny"
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        lo, hi = im.convert("L").getextrema()
    assert min_px <= w <= max_px and min_px <= h <= max_px, f"{path.name} is {w}x{h}"
    assert hi - lo > 50, f"{path.name} looks blank"
    assert not list(path.parent.glob(f".{path.name}.*")), "temporary file left behind"


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


# --------------------------------------------------------------------------------------------- grid.py
def test_sample_grid_rows_are_classes_and_tiles_come_from_their_class(tiles, tmp_path):
    out = tmp_path / "grid.png"
    fig = grid.sample_grid((tiles.paths, tiles.labels), tiles.classes, per_class=3, path=out, seed=1)
    assert isinstance(fig, Figure)
    assert_png(out)
    axes = np.array(fig.axes).reshape(len(tiles.classes), 3)
    class_tiles = {c: [grid.load_tile(p) for p, lab in zip(tiles.paths, tiles.labels) if lab == c]
                   for c in range(len(tiles.classes))}
    for row, name in enumerate(tiles.classes):
        assert axes[row, 0].get_ylabel().startswith(name)
        assert f"n={int((tiles.labels == row).sum())}" in axes[row, 0].get_ylabel()
        for ax in axes[row]:
            shown = np.asarray(ax.images[0].get_array())
            assert any(np.array_equal(shown, t) for t in class_tiles[row]), f"row {name} shows a foreign tile"


def test_sample_grid_is_seeded_and_accepts_dataset_objects(tiles):
    def shown(fig):
        return [np.asarray(ax.images[0].get_array()).sum() for ax in image_axes(fig)]

    pair = (tiles.paths, tiles.labels)
    as_dataset = SimpleNamespace(paths=tiles.paths, labels=tiles.labels)
    as_imagefolder = SimpleNamespace(samples=list(zip(tiles.paths, tiles.labels)))
    pil_tiles = [Image.fromarray(grid.load_tile(p)) for p in tiles.paths]  # a file-less dataset: images by index

    class FileLessDataset:
        paths, labels = None, tiles.labels

        def __len__(self):
            return len(pil_tiles)

        def __getitem__(self, i):
            return pil_tiles[i], int(tiles.labels[i]), i

    first = shown(grid.sample_grid(pair, tiles.classes, per_class=2, seed=3))
    assert first == shown(grid.sample_grid(FileLessDataset(), tiles.classes, per_class=2, seed=3))
    assert first == shown(grid.sample_grid(as_dataset, tiles.classes, per_class=2, seed=3))
    assert first == shown(grid.sample_grid(as_imagefolder, tiles.classes, per_class=2, seed=3))
    assert first != shown(grid.sample_grid(pair, tiles.classes, per_class=2, seed=4))


def test_sample_grid_leaves_cells_empty_for_small_classes_and_rejects_bad_labels(tiles):
    paths, labels = tiles.paths[:3], np.array([0, 0, 1])
    fig = grid.sample_grid((paths, labels), ["TUMOR", "STROMA", "ADIPOSE"], per_class=2)
    assert len(image_axes(fig)) == 3  # 2 tumour + 1 stroma + 0 adipose
    with pytest.raises(ValueError, match="outside classes"):
        grid.sample_grid((paths, np.array([0, 5, 1])), ["TUMOR", "STROMA"])
    with pytest.raises(ValueError, match="integer indices"):
        grid.sample_grid((paths, ["TUMOR", "TUMOR", "STROMA"]), ["TUMOR", "STROMA"])
    with pytest.raises(ValueError, match="dataset_or_paths_labels"):
        grid.sample_grid((paths, labels[:2]), ["TUMOR", "STROMA"])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        grid.sample_grid((["nope.png"], [0]), ["TUMOR"])


def test_class_counts_bar_draws_the_counts(tmp_path):
    counts = {"TUMOR": 18, "STROMA": 8, "ADIPOSE": 0}
    out = tmp_path / "counts.png"
    fig = grid.class_counts_bar(counts, path=out)
    assert_png(out)
    ax = fig.axes[0]
    assert [round(p.get_width()) for p in ax.patches] == [18, 8, 0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(counts)

    by_split = {"train": {"TUMOR": 10, "STROMA": 6}, "test": {"TUMOR": 3, "STROMA": 2}}
    fig = grid.class_counts_bar(by_split, path=tmp_path / "split.png")
    widths = sorted(round(p.get_width()) for p in fig.axes[0].patches if p.get_width() > 0)
    assert widths == [2, 3, 6, 10]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["train", "test"]
    with pytest.raises(ValueError, match="STROMA"):
        grid.class_counts_bar({"TUMOR": 3, "STROMA": -1})


def test_save_figure_is_atomic(tmp_path):
    out = tmp_path / "fig.png"
    out.write_bytes(b"previous complete figure")
    fig = grid.new_figure(2, 2)
    fig.subplots().plot([0, 1], [1, 0])

    def broken_savefig(fname, **kwargs):
        Path(fname).write_bytes(b"half a PNG")
        raise RuntimeError("renderer died")

    fig.savefig = broken_savefig
    with pytest.raises(RuntimeError, match="renderer died"):
        grid.save_figure(fig, out)
    assert out.read_bytes() == b"previous complete figure"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]
    with pytest.raises(ValueError, match=r"\.png"):
        grid.save_figure(grid.new_figure(2, 2), tmp_path / "fig.jpg")


# --------------------------------------------------------------------------------------------- gallery.py
def test_gallery_frames_hits_green_and_misses_red(tiles, tmp_path):
    labels = tiles.labels
    tumor = np.flatnonzero(labels == 0)
    lympho = np.flatnonzero(labels == 3)
    others = np.flatnonzero((labels != 0) & (labels != 3))
    # Query 0 is a tumour tile, query 1 a lymphocyte tile; hit patterns written out by hand.
    queries = [int(tumor[0]), int(lympho[0])]
    ids = np.array([[tumor[1], others[0], tumor[2], others[1], -1],
                    [others[2], lympho[1], lympho[2], others[3], tumor[3]]])
    expected = [["hit", "miss", "hit", "miss", "none"], ["miss", "hit", "hit", "miss", "miss"]]
    out = tmp_path / "gallery.png"
    fig = gallery.retrieval_gallery([tiles.paths[q] for q in queries], labels[queries], tiles.paths, labels, ids,
                                    tiles.classes, out, k=5, n_queries=2, scores=np.ones((2, 5)))
    assert_png(out)
    by_label = {ax.get_label(): ax for ax in fig.axes}
    color = {"hit": to_rgba(gallery.HIT_COLOR), "miss": to_rgba(gallery.MISS_COLOR)}
    for row in range(2):
        query_ax = by_label[f"query{row}"]
        assert all(s.get_edgecolor() == to_rgba(gallery.QUERY_COLOR) for s in query_ax.spines.values())
        assert query_ax.get_xlabel() == tiles.classes[labels[queries[row]]]
        for rank, verdict in enumerate(expected[row], start=1):
            ax = by_label[f"query{row}_rank{rank}"]
            edges = {s.get_edgecolor() for s in ax.spines.values()}
            if verdict == "none":
                assert not edges & set(color.values())
                continue
            assert edges == {color[verdict]}, f"query {row} rank {rank} should be a {verdict}"
            assert ax.get_xlabel() == tiles.classes[labels[ids[row, rank - 1]]]
            assert ax.get_title().startswith(f"#{rank}")


def test_gallery_rejects_bad_input_by_name(tiles):
    ids = np.zeros((2, 3), dtype=np.int64)
    args = (tiles.paths[:2], tiles.labels[:2], tiles.paths, tiles.labels)
    with pytest.raises(ValueError, match="k=5"):
        gallery.retrieval_gallery(*args, ids, tiles.classes, None, k=5)
    with pytest.raises(ValueError, match="ids"):
        gallery.retrieval_gallery(*args, np.zeros((3, 3), dtype=np.int64), tiles.classes, None, k=3)
    with pytest.raises(ValueError, match="ids must index"):
        gallery.retrieval_gallery(*args, ids + 1000, tiles.classes, None, k=3)
    with pytest.raises(ValueError, match="gallery_labels"):
        gallery.retrieval_gallery(*args, ids, tiles.classes[:2], None, k=3)


# --------------------------------------------------------------------------------------------- embeddings.py
def blobs(n_per=10, n_groups=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(n_groups, dim))
    labels = np.repeat(np.arange(n_groups), n_per)
    return (centres[labels] + rng.normal(size=(labels.size, dim))).astype(np.float32), labels


def test_umap_projection_keeps_clusters_and_is_seeded():
    features, labels = blobs()
    coords, info = embeddings.umap_projection(features, n_epochs=UMAP_EPOCHS)
    assert coords.shape == (40, 2) and np.isfinite(coords).all()
    assert info["n_neighbors"] == 15 and info["min_dist"] == 0.1 and not info["note"]
    # Well separated blobs stay separated: every point's nearest 2-D neighbour is of its own blob.
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=1).fit(coords, labels)
    _, nearest = knn.kneighbors(coords, n_neighbors=2)
    assert (labels[nearest[:, 1]] == labels).mean() == 1.0
    again, _ = embeddings.umap_projection(features, n_epochs=UMAP_EPOCHS)
    np.testing.assert_array_equal(coords, again)  # seeded


def test_umap_projection_small_and_bad_input():
    features, _ = blobs(n_per=5, n_groups=2)
    coords, info = embeddings.umap_projection(features, n_neighbors=15, n_epochs=UMAP_EPOCHS)
    assert coords.shape == (10, 2)
    assert info["n_neighbors"] == 9 and "15" in info["note"] and "9" in info["note"]
    with pytest.raises(ValueError, match="at least 4 samples"):
        embeddings.umap_projection(features[:3])
    features[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        embeddings.umap_projection(features)
    with pytest.raises(ValueError, match="features"):
        embeddings.umap_projection(features[0])


def test_embedding_panels_one_panel_per_method_with_class_legend(tmp_path):
    classes = ["TUMOR", "STROMA", "LYMPHO", "ADIPOSE"]
    f1, y1 = blobs(seed=1)
    f2, y2 = blobs(n_per=3, seed=2)  # 12 points: n_neighbors lowered, said in the panel title
    out = tmp_path / "panels.png"
    fig = embeddings.embedding_panels({"ImageNet": (f1, y1), "DINO-CypherViT": (f2, y2)}, classes, out,
                                      "UMAP, CRC", n_epochs=UMAP_EPOCHS, progress=False)
    assert_png(out)
    titles = [ax.get_title() for ax in fig.axes if ax.collections]
    assert titles[0] == "ImageNet" and titles[1].startswith("DINO-CypherViT") and "lowered" in titles[1]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == classes
    # Same class, same colour in every panel.
    first, second = ([c.get_facecolor()[0].tolist() for c in ax.collections] for ax in fig.axes[:2])
    assert first == second
    with pytest.raises(ValueError, match="DINO-CypherViT"):
        embeddings.embedding_panels({"DINO-CypherViT": (f2, y2 + 4)}, classes, None, progress=False)


def test_projection_plot_24_scans_distinct_styles(tmp_path):
    features, groups = blobs(n_per=3, n_groups=24, dim=8)
    names = [f"S{i}" for i in range(24)]
    out = tmp_path / "projection.png"
    fig = embeddings.projection_plot(features, groups, out, "Kimia Path24C test", group_names=names,
                                     legend_title="scan", n_epochs=UMAP_EPOCHS)
    assert_png(out)
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == names
    styles = {(tuple(to_rgba(h.get_color())), h.get_marker()) for h in legend.legend_handles}
    assert len(styles) == 24
    with pytest.raises(ValueError, match="groups"):
        embeddings.projection_plot(features, groups[:-1], None)
    # Without group_names any labels work, sorted, as they are.
    fig = embeddings.projection_plot(features[:12], np.array(["b", "a", "c"] * 4), None, n_epochs=UMAP_EPOCHS)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "c"]


# --------------------------------------------------------------------------------------------- attention.py
def test_upsample_maps_nearest_matches_block_repeat():
    maps = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    up = attention.upsample_maps(maps, (4, 4), "nearest")
    expected = np.stack([np.kron(m, np.ones((2, 2))) for m in maps])
    expected = (expected - expected.min(axis=(1, 2), keepdims=True)) / 3.0
    np.testing.assert_allclose(up, expected)
    assert np.array_equal(attention.upsample_maps(np.ones((1, 3, 3)), (6, 6)), np.zeros((1, 6, 6)))
    with pytest.raises(ValueError, match="upsample mode"):
        attention.upsample_maps(maps, (4, 4), "lanczos")


def test_attention_heads_figure_puts_each_head_where_it_looks(tiles, tmp_path):
    image = grid.load_tile(tiles.paths[0])  # 224 x 224, ViT-S/16 -> 14 x 14 patch grid
    attn = np.full((6, 14, 14), 0.01, dtype=np.float32)
    hot = [(3, 5), (10, 2), (0, 0), (13, 13), (7, 7), (1, 12)]
    for head, (r, c) in enumerate(hot):
        attn[head, r, c] = 1.0
    out = tmp_path / "heads.png"
    fig = attention.attention_heads_figure(image, attn, out, "DINO ViT-S/16 heads")
    assert_png(out)
    panels = image_axes(fig)
    assert [ax.get_title() for ax in panels] == ["Tile"] + [f"Head {i}" for i in range(1, 7)] + ["Mean of heads"]
    np.testing.assert_array_equal(np.asarray(panels[0].images[0].get_array()), image)
    for head, (r, c) in enumerate(hot):
        heat = np.asarray(panels[head + 1].images[1].get_array())
        assert heat.shape == (224, 224)
        rows, cols = np.nonzero(heat == heat.max())
        assert (rows.min(), rows.max(), cols.min(), cols.max()) == (16 * r, 16 * r + 15, 16 * c, 16 * c + 15)
    with pytest.raises(ValueError, match="attn"):
        attention.attention_heads_figure(image, attn[0], None)


def test_cls_attention_figure_rows_are_classes(tiles, tmp_path):
    rng = np.random.default_rng(0)
    classes = tiles.classes[:3]
    images = [grid.load_tile(tiles.paths[int(np.flatnonzero(tiles.labels == i)[0])]) for i in range(3)]
    attn = [rng.random((4, 7, 7)) for _ in range(3)]
    out = tmp_path / "cls.png"
    fig = attention.cls_attention_figure(images, attn, classes, out)
    assert_png(out)
    panels = np.array(image_axes(fig)).reshape(3, 5)
    assert [ax.get_ylabel() for ax in panels[:, 0]] == classes
    assert [ax.get_title() for ax in panels[0]] == ["Tile", "[cls] 1", "[cls] 2", "[cls] 3", "[cls] 4"]
    with pytest.raises(ValueError, match="same length"):
        attention.cls_attention_figure(images, attn[:2], classes, None)
    with pytest.raises(ValueError, match=r"attn\[1\]"):
        attention.cls_attention_figure(images, [attn[0], rng.random((2, 7, 7)), attn[2]], classes, None)


# --------------------------------------------------------------------------------------------- curves.py
def test_loss_curve_plots_loss_and_lr_on_twin_axes(tmp_path):
    history = [{"epoch": s // 10, "step": s, "loss": 5.0 - 0.1 * s, "lr": 1e-4 * min(1.0, s / 5)} for s in range(30)]
    out = tmp_path / "loss.png"
    fig = curves.loss_curve(history, out, "DINO pre-training")
    assert_png(out)
    loss_ax, lr_ax = fig.axes
    np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), [r["loss"] for r in history])
    np.testing.assert_allclose(lr_ax.lines[0].get_ydata(), [r["lr"] for r in history])
    assert loss_ax.get_xlabel() == "optimizer step" and lr_ax.get_ylabel() == "learning rate"
    assert "3 epochs" in loss_ax.get_title()
    epoch_marks = [line.get_xdata()[0] for line in loss_ax.lines[1:]]
    assert epoch_marks == [10, 20]


def test_loss_curve_without_lr_and_bad_records():
    history = [{"epoch": 0, "step": s, "loss": float("nan") if s == 2 else 1.0 / (s + 1)} for s in range(5)]
    fig = curves.loss_curve(history, None)
    assert len(fig.axes) == 1 and "1 non-finite loss value" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match=r"history\[1\].*'loss'"):
        curves.loss_curve([{"epoch": 0, "step": 0, "loss": 1.0}, {"epoch": 0, "step": 1}], None)
    with pytest.raises(ValueError, match=r"history\[0\]\['lr'\]"):
        curves.loss_curve([{"epoch": 0, "step": 0, "loss": 1.0, "lr": "fast"}], None)
    with pytest.raises(ValueError, match="empty"):
        curves.loss_curve([], None)


# --------------------------------------------------------------------------------------------- heatmap.py
def test_metric_heatmap_annotates_every_result(tmp_path):
    df = pd.DataFrame({"BRACS": [40.12, 55.55], "CRC": [90.0, np.nan]}, index=["ResNet50", "EsViT"])
    out = tmp_path / "heat.png"
    fig = heatmap.metric_heatmap(df, out, "mAP@10", metric_label="mAP@10 (%)")
    assert_png(out)
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["40.1", "55.5", "90.0"]  # NaN cell left blank
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ResNet50", "EsViT"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["BRACS", "CRC"]
    assert "higher is better" in ax.get_title() and "no result" in ax.get_title()
    fig = heatmap.metric_heatmap(df, None, "latency", fmt=".3f", higher_is_better=False)
    assert "40.120" in [t.get_text() for t in fig.axes[0].texts]
    assert fig.axes[0].collections[0].get_cmap().name == "viridis_r"


def test_metric_heatmap_rejects_bad_tables():
    with pytest.raises(ValueError, match="DataFrame"):
        heatmap.metric_heatmap([[1.0]], None)
    with pytest.raises(ValueError, match=r"df\['CRC'\] at row 'EsViT'"):
        heatmap.metric_heatmap(pd.DataFrame({"CRC": [1.0, "n/a"]}, index=["ResNet50", "EsViT"]), None)
    with pytest.raises(ValueError, match="fmt"):
        heatmap.metric_heatmap(pd.DataFrame({"CRC": [1.0]}), None, fmt="%d")
