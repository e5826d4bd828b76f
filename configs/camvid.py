r"""CamVid road scenes with synthetic scribbles, DeepLabV3+ on MobileNetV2.

Not a dataset of the paper: a real-photo check of the recipe that runs on the
data shipped beside the repository. ``../shared/data/camvid`` (701 images at
240x180, 11 classes, 367 train / 101 val / 233 test) is read as the ``folder``
dataset and prepared once, on first use, into ``--config.input.data_dir``
(default: TFDS's data dir) under the builder config ``camvid_synthetic``; it
has no human scribbles, so skeleton scribbles are synthesised from the masks
(:func:`potts_jax.data.synthetic_scribbles.skeleton_scribbles`, about 3% of
the pixels, seed ``input.scribble_seed``).

The recipe is :mod:`configs.voc`'s (two stages of 60 epochs, pCE at lr 0.007
then soft self-labeling at 0.0007 from stage 1, batch 12, H_CCE + P_CD, 4-NN,
eta 0.3, lambda 6, sigma_rgb 9, ImageNet MobileNetV2 from
``weights/mobilenet_v2``) at CamVid's size: crop 177 at scales 0.75-1.5 of the
crop, 1,835 steps per stage. Evaluation on ``test`` (233 images), full image.
Units of the lr: pixel-mean losses (``loss.normalization="pixel_mean"``, set
explicitly, not voc's ``batch_mean``), in which this check of the recipe has
been run: lr 0.007 / 0.0007 here is 12x the lineage's step at batch 12.

Run (from the repository root, or set ``--config.input.folder_root``)::

  python -m potts_jax.main --config=configs/camvid.py --workdir=DIR

Variants: ``method=``, ``relaxation=``, ``cross_entropy=``, ``neighborhood=``,
``stage=both|1|2``, ``batch=N``, ``pretrained=false`` (as :mod:`configs.voc`),
``eval=test|val`` (the evaluation split), ``runlocal`` (a few steps of a tiny
network, runs on 2 CPU cores). ``--config.input.folder_root=DIR`` reads
another copy of CamVid, ``--config.input.data_dir=DIR`` puts the prepared
dataset elsewhere.

Expected: no number in the paper; soft self-labeling should beat stage 1
(pCE) on test mIoU, as on VOC.
"""

import pathlib

import ml_collections

from configs import common

REPO = pathlib.Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"
TRAIN_IMAGES = 367
NUM_CLASSES = 11


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  arg = common.parse_arg(
      arg, method="soft_sl", relaxation="cd", cross_entropy="cce",
      neighborhood="nn4", stage="both", batch=12, eval="test",
      pretrained=True, runlocal=False)
  common.check_choice("stage", arg.stage, common.STAGES)
  common.check_choice("eval", arg.eval, ("test", "val"))
  c = common.get_config()
  c.lock()

  c.input.dataset = "folder"
  c.input.folder_root = str(CAMVID)
  c.input.dataset_config = "camvid_synthetic"
  c.input.scribble_set = "synthetic"
  c.input.scribble_seed = 0
  c.input.num_classes = NUM_CLASSES
  c.input.train_split = "train"
  c.input.batch_size = arg.batch
  c.input.crop_size = 177
  c.input.scale_range = (0.75, 1.5)
  c.input.flip = True
  c.input.blur_prob = 0.5
  c.eval.split = arg.eval
  c.eval.batch_size = 8

  c.model.backbone = "mobilenet_v2"
  c.model.width = 1.0
  c.model.output_stride = 16
  c.model.pretrained_dir = "weights/mobilenet_v2" if arg.pretrained else ""

  c.total_steps = common.steps_for(common.EPOCHS, TRAIN_IMAGES, arg.batch)
  # Pixel-mean losses, explicitly (not voc's batch_mean): this check of the
  # recipe has been run with lr 0.007 / 0.0007 on pixel means, 12x the
  # lineage's step at batch 12.
  c.loss.normalization = "pixel_mean"
  common.set_loss(c, arg)
  c.energy.eta = 0.3
  c.energy.lam = 6.0
  c.energy.sigma_rgb = 9.0
  c.solver.num_steps = 200
  c.solver.step_size = 0.075

  c.log_every = 25
  c.checkpoint_every = 500
  c.name = (f"camvid_{arg.method}_{arg.cross_entropy}_{arg.relaxation}_"
            f"{arg.neighborhood}")
  if arg.runlocal:
    common.set_runlocal(c)
    c.eval.split = "val"
  common.set_stages(c, arg.stage, arg.method, common.STAGE1_LR,
                    common.STAGE2_LR)
  return c
