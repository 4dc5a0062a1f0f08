"""Pretrains a frozen encoder inside the suite, on data disjoint from the stream, and saves it.

    python run.py --config=configs/pretrain_fmnist.py --workdir=workdir/encoders/fmnist_b4_cnn
    directory = run_pretrain(config, "workdir/encoders/fmnist_b4_cnn")   # what run.py calls

A pretraining config is a benchmark config (``dataset``, ``stream``, ``model``, ``train``) plus a
``pretrain`` section, whose presence is what makes run.py call this module:

- ``pretrain.data = "base_task"``: the stream's task 0 only (B{m}: its first m classes, training
  split), so the encoder never sees a class of a later task. The stream is built exactly as the
  benchmark builds it (same dataset, split and class order), labels in stream order.
- ``pretrain.data = "dataset"``: every class of ``dataset`` (another dataset than the stream's).
- ``pretrain.data = "held_out"``: the ``dataset.held_out`` training images the stream gives up
  (every class, with labels; tested on the test split): data disjoint from the stream, classes not.
- ``pretrain.seed``: initialisation and shuffling; ``pretrain.encoder_stages``: how many of the
  network's stages form the encoder (None: all, i.e. the features the head reads).

The network (``model``) is trained with the shared Trainer by ``train``'s schedule for a first
task (``train.first_task`` applies: a network trained from scratch), checked on the
test split of the same classes, and written with ``cil.encoders.save_encoder`` to ``workdir``
(``encoder.json`` records the data it saw and that test accuracy). ``train.augment`` applies, as
in every training.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from cil import encoders, models, parallel, training
from cil.data import sources, stream as streams
from cil.errors import ConfigError
from cil.fields import Field, Integer, OneOf, Optional, check
from cil.results import prepare_workdir
from cil.training import Trainer

# config.pretrain; the other sections are a benchmark config's (cil/experiment.py).
FIELDS = {
    "data": Field("base_task", OneOf("base_task", "dataset", "held_out"),
                  "base_task: the stream's task 0; dataset: all of config.dataset; held_out: "
                  "its dataset.held_out images"),
    "seed": Field(0, Integer(min=0, max=2**31 - 1), "initialisation and shuffling"),
    "encoder_stages": Field(None, Optional(Integer(min=1)), "unset: every stage"),
}
SECTIONS = {"dataset": sources.FIELDS, "stream": streams.FIELDS, "train": training.FIELDS,
            "pretrain": FIELDS}


def validate(config: ml_collections.ConfigDict) -> None:
    expected = {*SECTIONS, "model"}
    unknown, missing = sorted(set(config.keys()) - expected), sorted(expected - set(config.keys()))
    if unknown or missing:
        raise ConfigError(f"a pretraining config has exactly the sections {', '.join(sorted(expected))} "
                          f"(unknown: {', '.join(unknown) or 'none'}; missing: "
                          f"{', '.join(missing) or 'none'}); start from configs/pretrain_fmnist.py")
    models.check(config.model)
    check({k: config[k] for k in SECTIONS}, SECTIONS, "")
    training.task_schedule(config.train, 0)


def pretraining_data(config) -> tuple[sources.Dataset, dict]:
    """The training and test examples the encoder may see, and a record of what they are."""
    if config.pretrain.data == "held_out":
        held = sources.load_held_out(config.dataset)
        return held, {"data": "held_out", "dataset": held.name, "images": len(held.train_labels),
                      "classes": list(held.class_names)}
    dataset = sources.load(config.dataset)
    if config.pretrain.data == "dataset":
        return dataset, {"data": "dataset", "dataset": dataset.name,
                         "classes": list(dataset.class_names)}
    order = config.stream.class_order
    stream = streams.make_stream(dataset, config.stream.initial, config.stream.increment,
                                 config.stream.class_order_seed, list(order) if order else None)
    train, test = stream.train_task(0), stream.test_seen(0)
    names = stream.class_names[: len(train.classes)]
    base = sources.Dataset(dataset.name, train.images, train.labels, test.images, test.labels, names)
    return base, {"data": "base_task", "dataset": dataset.name, "split": stream.split_name,
                  "class_order": list(stream.class_order), "classes": list(names),
                  "stream_labels": list(train.classes)}


def run_pretrain(config: ml_collections.ConfigDict, workdir: str,
                 progress: Callable[[str], None] = print) -> Path:
    """Trains ``config.model`` on the pretraining data and saves it as a frozen encoder in ``workdir``."""
    validate(config)
    prepare_workdir(workdir)
    data, trained_on = pretraining_data(config)
    num_classes = data.num_classes
    progress(f"pretraining {config.model.name} on {trained_on['data']} of {data.name}: "
             f"{num_classes} classes, {len(data.train_labels)} train / {len(data.test_labels)} test")
    init_key, train_key = jax.random.split(jax.random.key(config.pretrain.seed))
    network = models.build(config.model, data.image_shape, num_classes, seed=init_key)
    graphdef, params, model_state = nnx.split(network, nnx.Param, ...)
    trainer = Trainer(graphdef, config.train, parallel.data_mesh(), capacity=len(data.train_labels))
    device_data = trainer.put(data.train_images, data.train_labels)
    schedule = trainer.schedule(0)
    start = time.perf_counter()
    net, _ = trainer.fit({"params": params, "model_state": model_state}, device_data, train_key,
                         num_classes, schedule, progress=lambda epoch, loss: progress(
                             f"epoch {epoch + 1}/{schedule.epochs}: loss {loss:.4f}"))
    seconds = time.perf_counter() - start
    accuracy = test_accuracy(trainer, net, data)
    progress(f"test accuracy on the pretraining classes {accuracy:.4f} ({seconds:.1f}s training)")
    trained = nnx.merge(graphdef, net["params"], net["model_state"])
    meta = {"model": config.model.to_dict(), "image_shape": list(data.image_shape),
            "num_classes": num_classes, "encoder_stages": config.pretrain.encoder_stages,
            "trained_on": {**trained_on, "epochs": schedule.epochs, "seed": config.pretrain.seed,
                           "test_accuracy": accuracy, "train_seconds": seconds}}
    directory = encoders.save_encoder(workdir, trained, meta)
    progress(f"encoder saved to {directory}")
    return directory


def test_accuracy(trainer: Trainer, net: dict, data: sources.Dataset, batch_size: int = 1000) -> float:
    correct = 0
    for start in range(0, len(data.test_labels), batch_size):
        logits = trainer.logits(net, data.test_images[start:start + batch_size])
        correct += int(np.sum(np.argmax(np.asarray(logits), -1) ==
                              data.test_labels[start:start + batch_size]))
    return correct / max(len(data.test_labels), 1)
