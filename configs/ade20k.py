r"""ADE20k with block scribbles, DeepLabV3+ on ResNet-101 (paper Table 6).

Paper (section 3.5, appendix C, Table 6): 150 classes, 20,210 training and
2,000 validation images, the block-wise annotation of TEL [25] keeping 50% of
the labels (``block50``), an ImageNet-pretrained ResNet-101, H_CCE + P_CD on
the 4-neighbourhood, eta 0.3, lambda 6, sigma_rgb **3**, batch 12 (the
paper's default), SGD with poly 0.9, trained in a *single stage*.

Not in the paper, taken from the lineage: crop 513 at scales 0.5-2 of the crop
(the VOC crop of the paper's code base; TEL's openseg config crops 520), lr
0.01 (pytorch-deeplab-xception's non-VOC rate) and 120 epochs (about
openseg's 150k iterations at batch 16): 202,100 steps at batch 12.

Prerequisites: ``ade20k_block`` prepared in ``--config.data_dir`` (builder
config ``block50``) and ``weights/resnet101``. Run::

  python -m potts_jax.main --config=configs/ade20k.py --workdir=DIR

Variants: as :mod:`configs.cityscapes` (``method=``, ``relaxation=``,
``cross_entropy=``, ``neighborhood=``, ``block=50|20|10``,
``stage=single|both|1|2``, ``batch=N``, ``pretrained=false``, ``runlocal``).

Expected (paper Table 6, val mIoU, block50, ResNet-101): 39.7 (TEL 39.2,
GridCRF loss 37.7, DenseCRF loss 37.4; full supervision 44.6).
"""

import ml_collections

from configs import common
from configs import voc

TRAIN_IMAGES = 20_210
EPOCHS = 120
LR = 0.01
BLOCKS = (10, 20, 50)


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  arg = common.parse_arg(
      arg, method="soft_sl", relaxation="cd", cross_entropy="cce",
      neighborhood="nn4", stage="single", block=50, batch=12,
      pretrained=True, runlocal=False)
  voc.check_choice("block", arg.block, BLOCKS)
  c = common.get_config()
  c.lock()

  c.dataset = "ade20k_block"
  c.dataset_config = f"block{arg.block}"
  c.num_classes = 150
  c.train_split = "train"
  c.eval_split = "val"
  c.crop_size = 513
  c.scale_range = (0.5, 2.0)
  c.flip = True
  c.blur_prob = 0.0
  c.eval_batch_size = 4

  c.model.backbone = "resnet101"
  c.model.output_stride = 16
  c.model.pretrained_dir = "weights/resnet101" if arg.pretrained else ""

  c.batch_size = arg.batch
  c.total_steps = voc.steps_for(EPOCHS, TRAIN_IMAGES, arg.batch)
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.poly_power = 0.9

  voc.set_loss(c, arg)
  c.eta = 0.3
  c.lam = 6.0
  c.sigma_rgb = 3.0
  c.solver_steps = 200
  c.solver_step_size = 0.075

  c.log_every = 50
  c.checkpoint_every = 1000
  c.name = (f"ade20k_block{arg.block}_{arg.method}_{arg.cross_entropy}_"
            f"{arg.relaxation}_{arg.neighborhood}")
  if arg.runlocal:
    voc.set_runlocal(c)
  voc.set_stages(c, arg.stage, arg.method, LR, LR / 10)
  return c
