"""Defaults shared by every config, and the helpers the configs share.

big_vision style: plain, nested ConfigDicts. Every key a run reads is here, so
``--config.SECTION.KEY=VALUE`` works for all of them and a typo fails
(ConfigDicts are locked). Paper defaults (appendix C) where the paper has one.
The sections:

* top level: ``seed``, ``name``, ``parallel``, ``init_from``, ``stages`` and
  the loop (``total_steps``, ``log_every``, ``image_every``,
  ``checkpoint_every``, ``keep_checkpoints``, ``figure``);
* ``input``: the data and its augmentation (:mod:`potts_jax.data.sources`,
  :mod:`potts_jax.data.pipeline`);
* ``model``: the DeepLabV3+ (:func:`potts_jax.train.build_model`);
* ``optim``: SGD and its schedule (:func:`potts_jax.train.make_optimizer`);
* ``loss``: the training method and the loss's normalisation
  (:mod:`potts_jax.steps`);
* ``energy``: the fields of :class:`potts_jax.solver.EnergyParams`, the
  Potts energy of the solver and of the GD loss;
* ``solver``: the fields of :class:`potts_jax.solver.SolverOptions` (but its
  ``optimizer``), how the pseudo-labels are solved;
* ``eval``: the evaluation split, protocol and schedule
  (:mod:`potts_jax.evaluation`).

The ``energy`` and ``solver`` defaults are those of the solver's dataclasses
(:mod:`potts_jax.solver.options`, where each is written once); a step maps
the sections onto them with ``EnergyParams(**config.energy)`` and
``SolverOptions(**config.solver)``.

``stages`` lists one dict of overrides per stage, with dotted keys
(``{"name": "stage2", "loss.method": "soft_sl", "optim.lr": 0.0007}``); a key
a stage does not set keeps the config's value (so ``--config.optim.lr`` sets
the lr of a stage 1 that names none); stage ``k``
starts from stage ``k - 1`` (:func:`potts_jax.train.train_and_evaluate`).
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from potts_jax import solver

# The paper's recipe (appendix C), shared by the configs that follow it.
EPOCHS = 60  # per stage.
STAGE1_LR = 0.007
STAGE2_LR = 0.0007
# block_config's shares of labelled pixels and lr (Table 6's single stage;
# pytorch-deeplab-xception's non-VOC rate).
BLOCKS = (10, 20, 50)
BLOCK_LR = 0.01

# The names the steps, losses and solver accept (potts_jax.steps.METHODS,
# potts.NAMES, losses.NAMES, neighbourhoods), checked by the configs so that a
# typo in a variant fails when the config loads rather than after the data is
# opened.
METHODS = ("pce", "gd", "soft_sl", "hard_sl", "hard_sl_gc")
RELAXATIONS = ("bl", "q", "nq", "cce", "cd", "lq")
CROSS_ENTROPIES = ("ce", "rce", "cce", "q")
NEIGHBORHOODS = ("nn4", "nn8", "dense")
STAGES = ("both", "1", "2", "single")


def parse_arg(arg: str, **defaults):
  """``"a=1,b=x,flag"`` -> ConfigDict with the defaults' types (big_vision).

  A bare word sets a bool to True; unknown keys are an error naming them.
  """
  parsed = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config variant {key!r}; known: "
                       f"{sorted(defaults)}")
    default = defaults[key]
    if not value:
      value = True
    elif isinstance(default, bool):
      value = value.lower() in ("1", "true", "yes")
    elif default is not None:
      value = type(default)(value)
    parsed[key] = value
  return parsed


def _energy_section() -> ml_collections.ConfigDict:
  """:class:`EnergyParams`' defaults; ``lattice_capacity`` None as 0 (the
  bound, which the solver reads the same), as a ConfigDict key keeps the
  type of its default."""
  fields = dataclasses.asdict(solver.EnergyParams())
  if fields["lattice_capacity"] is None:
    fields["lattice_capacity"] = 0
  return ml_collections.ConfigDict(fields)


def _solver_section() -> ml_collections.ConfigDict:
  """:class:`SolverOptions`' defaults but ``optimizer`` (an optax object, for
  ``method="optax"`` from code); ``warm_start`` None as ``""`` (none)."""
  fields = dataclasses.asdict(solver.SolverOptions())
  del fields["optimizer"]
  if fields["warm_start"] is None:
    fields["warm_start"] = ""
  return ml_collections.ConfigDict(fields)


def get_config() -> ml_collections.ConfigDict:
  """Every key with its default (module docstring)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.name = ""
  c.parallel = "shard_map"  # or "pmap"
  c.init_from = ""  # a stage-1 workdir or checkpoint
  c.stages = ()  # e.g. ({"name": "stage1", "loss.method": "pce"}, {...})

  # The loop.
  c.total_steps = 1000
  c.log_every = 50
  c.image_every = 0
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  # A step whose loss terms or gradient norm are not finite is skipped (its
  # update not applied, potts_jax.steps.guard_nonfinite), checked at every
  # log step and checkpoint. "stop": stop the run with an error after
  # max_nonfinite_steps consecutive skipped steps; "skip": go on skipping.
  c.nonfinite = "stop"
  c.max_nonfinite_steps = 3
  c.figure = False  # write WORKDIR/figure.png (image, GT, y, prediction)

  # Data (potts_jax/data/sources.py) and augmentation (data/pipeline.py).
  c.input = ml_collections.ConfigDict()
  c.input.dataset = "demo"
  c.input.dataset_config = ""
  c.input.data_dir = ""  # "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.input.folder_root = ""
  c.input.folder_downscale = 1  # dataset=folder: every example at 1/f size
  c.input.scribble_set = ""
  c.input.scribble_seed = 0
  c.input.num_classes = 0  # 0 = from the dataset's metadata
  c.input.train_split = "train"
  c.input.batch_size = 12  # the global batch
  c.input.crop_size = 513
  c.input.scale_range = (0.5, 2.0)
  c.input.flip = True
  c.input.blur_prob = 0.0
  c.input.worker_count = 0
  c.input.full_supervision = False  # train on the dense masks (upper bound)
  c.input.demo = ml_collections.ConfigDict()  # dataset=demo: DemoSource's

  # Network (potts_jax/models/deeplabv3plus.py).
  c.model = ml_collections.ConfigDict()
  c.model.backbone = "mobilenet_v2"
  c.model.width = 1.0
  c.model.output_stride = 16
  c.model.channels = 256
  c.model.low_level_channels = 48
  c.model.dropout_rate = 0.1
  c.model.sync_bn = True
  # `python -m potts_jax.models.pretrained convert`'s output directory:
  c.model.pretrained_dir = ""

  # Optimiser: SGD momentum, weight decay, poly decay, head lr x10.
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.007
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.poly_power = 0.9
  c.optim.head_lr_mult = 10.0

  # Method and loss (potts_jax/steps.py).
  c.loss = ml_collections.ConfigDict()
  c.loss.method = "pce"  # pce | gd | soft_sl | hard_sl | hard_sl_gc
  # What the lr is measured against (potts_jax.losses.normalization_scale):
  # "pixel_mean", every loss term a mean over the counted pixels of the global
  # batch; "batch_mean", those means divided by the global batch size B, the
  # loss of the paper's code lineage (rloss / pytorch-deeplab-xception:
  # CrossEntropyLoss(batch_average=True), DenseCRF loss / n), for which its
  # lr 0.007 / 0.0007 were set. A batch_mean step at lr η equals a pixel_mean
  # step at lr η/B with weight decay B·wd. The default is pixel_mean, the
  # units the demo and CamVid configs were tuned in; the paper configs (voc,
  # voc_r101, cityscapes, ade20k) set batch_mean.
  c.loss.normalization = "pixel_mean"

  # The energy of the pseudo-labels and of the GD loss
  # (potts_jax.solver.EnergyParams): relaxation, cross_entropy, neighborhood,
  # eta, lam, sigma_rgb, sigma_xy (spatial bandwidth in pixels of
  # neighborhood="dense"), scale_factor (dense filters at this fraction of
  # the size), lattice_capacity (static lattice slots per image of dense;
  # 0 = the safe bound 6N; fewer slots filter faster, real crops need 2-13%
  # of N at 513²: choose with potts_jax.dense.bilateral.choose_capacity on a
  # few batches; an overflow stops the run with an error naming this key).
  c.energy = _energy_section()

  # How the pseudo-labels are solved (potts_jax.solver.SolverOptions):
  # method gd (the paper's), adam (optax's Adam on the logits at
  # adam_step_size), mirror, mirror_momentum (potts_jax.solver.updates);
  # num_steps, step_size; warm_start "coarse": start from warm_start_steps
  # steps on the 2x2-pooled problem (grid neighbourhoods; "" = none).
  c.solver = _solver_section()

  # Evaluation (potts_jax/evaluation.py). The protocol, named in the string
  # logged with every number: "full" (every image at its own size, unpadded:
  # exact; one compilation per distinct image shape), "center_crop" (rloss's
  # FixScaleCrop(crop_size): short side resized to it, the centre square
  # scored) or "padded" (zeros to pad_to, or to each batch's largest image:
  # the padding enters the network).
  c.eval = ml_collections.ConfigDict()
  c.eval.split = "val"
  c.eval.batch_size = 4  # the global batch
  c.eval.protocol = "full"
  c.eval.crop_size = 513  # protocol=center_crop
  c.eval.pad_to = ()  # protocol=padded: e.g. (512, 512); () = batch max
  c.eval.every = 0  # also evaluate every this many steps (0: at the end)
  c.eval.scales = (1.0,)
  c.eval.flip = False
  return c


# Helpers of the experiment configs.


def check_choice(name: str, value, choices) -> None:
  """Raises ValueError unless ``value`` is one of ``choices``."""
  if value not in choices:
    raise ValueError(f"config variant {name}={value!r}; expected one of "
                     f"{list(choices)}")


def steps_for(epochs: float, images: int, batch_size: int) -> int:
  """Optimiser steps of ``epochs`` passes over ``images`` at ``batch_size``."""
  return math.ceil(epochs * images / batch_size)


def set_loss(c: ml_collections.ConfigDict, arg: ml_collections.ConfigDict
             ) -> None:
  """The method and energy names of ``arg`` (checked) into ``c``."""
  check_choice("method", arg.method, METHODS)
  check_choice("relaxation", arg.relaxation, RELAXATIONS)
  check_choice("cross_entropy", arg.cross_entropy, CROSS_ENTROPIES)
  check_choice("neighborhood", arg.neighborhood, NEIGHBORHOODS)
  if arg.method == "hard_sl_gc" and arg.neighborhood == "dense":
    raise ValueError("method=hard_sl_gc cuts a grid graph: use "
                     "neighborhood=nn4 or nn8, not dense")
  c.loss.method = arg.method
  c.energy.relaxation = arg.relaxation
  c.energy.cross_entropy = arg.cross_entropy
  c.energy.neighborhood = arg.neighborhood


def set_runlocal(c: ml_collections.ConfigDict) -> None:
  """A tiny network on small crops for a few steps (the data stays)."""
  c.input.crop_size = 65
  c.input.batch_size = 4
  c.input.worker_count = 0
  c.eval.batch_size = 4
  c.model.width = 0.35
  c.model.channels = 16
  c.model.low_level_channels = 8
  c.model.pretrained_dir = ""
  c.solver.num_steps = 5
  c.total_steps = 3
  c.log_every = 1
  c.checkpoint_every = 2
  c.image_every = 2


def set_stages(c: ml_collections.ConfigDict, stage: str, method: str,
               lr1: float, lr2: float) -> None:
  """Stage 1 pCE at ``lr1``, stage 2 ``method`` at ``lr2`` (appendix C).

  Args:
    c: the config.
    stage: ``both`` (``c.stages`` lists the two), ``1`` (pCE alone at
      ``lr1``), ``2`` (``method`` alone at ``lr2``, from ``init_from``) or
      ``single`` (``method`` alone at ``lr1``: Table 6's single stage).
    method: the stage-2 method.
    lr1, lr2: the stages' initial learning rates.
  """
  if stage == "both":
    c.loss.method = "pce"
    c.optim.lr = lr1
    # Stage 1 takes the base lr (--config.optim.lr sets it), stage 2 lr2.
    c.stages = ({"name": "stage1", "loss.method": "pce"},
                {"name": "stage2", "loss.method": method, "optim.lr": lr2})
  elif stage == "1":
    c.loss.method = "pce"
    c.optim.lr = lr1
  elif stage == "2":
    c.loss.method = method
    c.optim.lr = lr2
  elif stage == "single":
    c.loss.method = method
    c.optim.lr = lr1
  else:
    raise ValueError(f"config variant stage={stage!r}; expected both, 1, 2 "
                     "or single")


def block_config(arg: str, *, dataset: str, num_classes: int,
                 train_images: int, epochs: int, crop_size: int
                 ) -> ml_collections.ConfigDict:
  """The block-scribble recipe of Table 6 (:mod:`configs.cityscapes`,
  :mod:`configs.ade20k`): ResNet-101, H_CCE + P_CD on 4-NN, σ_rgb 3, one
  stage at lr 0.01 on the lineage's ``batch_mean`` loss.

  Args:
    arg: the variant (``method=``, ``relaxation=``, ``cross_entropy=``,
      ``neighborhood=``, ``block=50|20|10``, ``stage=single|both|1|2``,
      ``batch=N``, ``pretrained=false``, ``runlocal``).
    dataset: the prepared dataset (``cityscapes_block``, ``ade20k_block``).
    num_classes: its classes.
    train_images: its training images.
    epochs: the epochs to train for.
    crop_size: the training crop.
  """
  arg = parse_arg(
      arg, method="soft_sl", relaxation="cd", cross_entropy="cce",
      neighborhood="nn4", stage="single", block=50, batch=12,
      pretrained=True, runlocal=False)
  check_choice("block", arg.block, BLOCKS)
  c = get_config()
  c.lock()

  c.input.dataset = dataset
  c.input.dataset_config = f"block{arg.block}"
  c.input.num_classes = num_classes
  c.input.train_split = "train"
  c.input.batch_size = arg.batch
  c.input.crop_size = crop_size
  c.input.scale_range = (0.5, 2.0)
  c.input.flip = True
  c.input.blur_prob = 0.0
  c.eval.split = "val"
  c.eval.batch_size = 4

  c.model.backbone = "resnet101"
  c.model.output_stride = 16
  c.model.pretrained_dir = "weights/resnet101" if arg.pretrained else ""

  c.total_steps = steps_for(epochs, train_images, arg.batch)
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.poly_power = 0.9
  # The lineage's loss (pixel mean / batch size), for which lr 0.01 is set.
  c.loss.normalization = "batch_mean"

  set_loss(c, arg)
  c.energy.eta = 0.3
  c.energy.lam = 6.0
  c.energy.sigma_rgb = 3.0
  c.solver.num_steps = 200
  c.solver.step_size = 0.075

  c.log_every = 50
  c.checkpoint_every = 1000
  c.name = (f"{dataset}{arg.block}_{arg.method}_{arg.cross_entropy}_"
            f"{arg.relaxation}_{arg.neighborhood}")
  if arg.runlocal:
    set_runlocal(c)
  set_stages(c, arg.stage, arg.method, BLOCK_LR, BLOCK_LR / 10)
  return c
