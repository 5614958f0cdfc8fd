"""Every Flower Datasets partitioner that splits labelled samples runs through FlwrPartitioner:
its client index arrays are exactly what the Flower partitioner itself yields on the same data
and seed, and they have the property the partitioner promises."""

import numpy as np
import pytest

pytest.importorskip("flwr_datasets")  # the 'flwr' extra; make install includes it

from datasets import Dataset  # noqa: E402

from datamodules import Digits, FlwrPartitioner, FromDatasets  # noqa: E402
from tests.user_data import digits_arrays, hf_digits  # noqa: E402

P = "flwr_datasets.partitioner."
LABELS = np.repeat(np.arange(10), 40)  # 400 samples, 40 per class
WRITER = np.arange(400) % 8  # a natural id: 8 writers
BRIGHT = np.linspace(0.0, 1.0, 400)  # a continuous property
COLUMNS = {"writer": WRITER, "bright": BRIGHT}


def _flower(name, kwargs, num_parts):
    """Flower's own partitions of the same table (every argument spelled out)."""
    import flwr_datasets.partitioner as fp

    partitioner = getattr(fp, name)(**kwargs)
    partitioner.dataset = Dataset.from_dict({"label": LABELS, **COLUMNS, "i": np.arange(400)})
    return [np.sort(np.asarray(partitioner.load_partition(c)["i"])) for c in range(num_parts)]


def _sizes(parts):
    return [len(p) for p in parts]


def _classes(parts):
    return [len(np.unique(LABELS[p])) for p in parts]


# name, init_args given to FlwrPartitioner, the arguments flcore fills, clients, property check
CASES = [
    ("IidPartitioner", {}, {"num_partitions": 8}, 8, lambda p: _sizes(p) == [50] * 8),
    ("LinearPartitioner", {}, {"num_partitions": 8}, 8, lambda p: _sizes(p) == sorted(_sizes(p))),
    ("SquarePartitioner", {}, {"num_partitions": 8}, 8, lambda p: _sizes(p) == sorted(_sizes(p))),
    ("ExponentialPartitioner", {}, {"num_partitions": 4}, 4, lambda p: _sizes(p) == sorted(_sizes(p))),
    ("IdToSizeFncPartitioner", {"partition_id_to_size_fn": lambda i: i + 1}, {"num_partitions": 4}, 4,
     lambda p: _sizes(p) == sorted(_sizes(p))),
    ("DirichletPartitioner", {"alpha": 0.5, "min_partition_size": 20, "seed": 7},
     {"num_partitions": 8, "partition_by": "label"}, 8, lambda p: min(_sizes(p)) >= 20),
    ("InnerDirichletPartitioner", {"partition_sizes": [30, 70] * 4, "alpha": 0.3, "seed": 7},
     {"partition_by": "label"}, 8, lambda p: _sizes(p) == [30, 70] * 4),
    ("PathologicalPartitioner", {"num_classes_per_partition": 2, "class_assignment_mode": "deterministic",
                                 "seed": 7},
     {"num_partitions": 10, "partition_by": "label"}, 10, lambda p: _classes(p) == [2] * 10),
    ("ShardPartitioner", {"num_shards_per_partition": 5, "seed": 7}, {"num_partitions": 8, "partition_by": "label"},
     8, lambda p: _sizes(p) == [50] * 8 and max(_classes(p)) <= 5),
    ("SizePartitioner", {"partition_sizes": [100, 100, 50, 50, 25, 25, 25, 25]}, {}, 8,
     lambda p: _sizes(p) == [100, 100, 50, 50, 25, 25, 25, 25]),
    ("DistributionPartitioner", {"distribution_array": np.random.default_rng(1).random((10, 2)).tolist(),
                                 "num_unique_labels_per_partition": 2, "preassigned_num_samples_per_label": 5,
                                 "seed": 7},
     {"num_partitions": 10, "partition_by": "label"}, 10, lambda p: max(_classes(p)) == 2),
    ("ContinuousPartitioner", {"partition_by": "bright", "strictness": 1.0, "seed": 7}, {"num_partitions": 8}, 8,
     lambda p: np.all(np.diff([BRIGHT[q].mean() for q in p]) > 0)),
    ("NaturalIdPartitioner", {"partition_by": "writer"}, {}, 8,
     lambda p: [np.unique(WRITER[q]).tolist() for q in p] == [[w] for w in range(8)]),
    ("GroupedNaturalIdPartitioner", {"partition_by": "writer", "group_size": 2}, {}, 4,
     lambda p: all(len(np.unique(WRITER[q])) == 2 for q in p)),
]


@pytest.mark.parametrize("name, init_args, filled, clients, promise", CASES, ids=[c[0] for c in CASES])
def test_each_flower_partitioner_matches_flower(name, init_args, filled, clients, promise):
    parts = FlwrPartitioner(P + name, init_args, columns=COLUMNS)(LABELS, clients, np.random.default_rng(0))
    reference = _flower(name, {**filled, **init_args, **({"distribution_array": np.asarray(
        init_args["distribution_array"])} if "distribution_array" in init_args else {})}, clients)
    assert [p.tolist() for p in parts] == [r.tolist() for r in reference]
    assert sorted(np.concatenate(parts).tolist()) == list(range(400))  # every sample, once
    assert promise(parts)


def test_the_seed_is_drawn_from_flcore_rng():
    part = FlwrPartitioner(P + "DirichletPartitioner", {"alpha": 0.5, "min_partition_size": 5})
    a, b, c = (part(LABELS, 8, np.random.default_rng(s)) for s in (0, 0, 1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_unassigned_samples_are_refused_unless_dropped():
    args = {"num_shards_per_partition": 2, "shard_size": 20}
    with pytest.raises(ValueError, match=r"ShardPartitioner assigned 320 of 400 training samples to clients; "
                                         r"set partition.drop_unassigned: true"):
        FlwrPartitioner(P + "ShardPartitioner", args)(LABELS, 8, np.random.default_rng(0))
    parts = FlwrPartitioner(P + "ShardPartitioner", args, drop_unassigned=True)(LABELS, 8, np.random.default_rng(0))
    assert _sizes(parts) == [40] * 8 and len(np.unique(np.concatenate(parts))) == 320


def test_a_natural_id_partitioner_must_make_num_clients_partitions():
    part = FlwrPartitioner(P + "NaturalIdPartitioner", {"partition_by": "writer"}, columns=COLUMNS)
    with pytest.raises(ValueError, match=r"^data.num_clients: NaturalIdPartitioner makes 8 partitions here; "
                                         r"set data.num_clients to 8$"):
        part(LABELS, 5, np.random.default_rng(0))


def test_vertical_partitioners_are_refused():
    with pytest.raises(ValueError, match=r"^partition: VerticalEvenPartitioner splits features among parties"):
        FlwrPartitioner(P + "VerticalEvenPartitioner")


def test_a_column_the_data_lacks_is_refused_naming_it():
    dm = Digits(num_clients=4, partition=FlwrPartitioner(P + "NaturalIdPartitioner", {"partition_by": "writer"}))
    with pytest.raises(ValueError, match=r"^data.partition: FlwrPartitioner reads the column\(s\) \['writer'\], "
                                         r"which Digits does not have"):
        dm.setup()


def test_a_hugging_face_column_is_the_natural_id_after_the_held_out_split():
    """FromDatasets hands the dataset's own writer column to NaturalIdPartitioner, restricted to
    the samples left after the validation split."""
    _, y = digits_arrays("train")
    writer = np.arange(len(y)) % 6
    part = FlwrPartitioner(P + "NaturalIdPartitioner", {"partition_by": "writer"})
    dm = FromDatasets(hf_digits("train", writer=writer), hf_digits("test"), input_key="image", num_clients=6,
                      partition=part, val_size=0.1, batch_size=20)
    dm.setup()
    _, _, keep = dm.held_out(len(y))
    kept_writer = writer[keep.numpy()]
    assert [np.unique(kept_writer[c]).tolist() for c in dm.client_indices] == [[w] for w in range(6)]
    assert sum(map(len, dm.client_indices)) == len(keep)
