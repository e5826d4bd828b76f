"""Defaults shared by every config (big_vision style: plain ConfigDicts).

Every key a run reads is here, so ``--config.KEY=VALUE`` works for all of them
and a typo fails (ConfigDicts are locked). Paper defaults (appendix C) where
the paper has one.
"""

import ml_collections


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


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.parallel = "shard_map"  # or "pmap"

  # Data (potts_jax/data/sources.py).
  c.dataset = "demo"
  c.dataset_config = ""
  c.data_dir = ""  # "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.folder_root = ""
  c.folder_downscale = 1  # dataset=folder: store every example at 1/f size
  c.scribble_set = ""
  c.scribble_seed = 0
  c.num_classes = 0  # 0 = from the dataset's metadata
  c.train_split = "train"
  c.eval_split = "val"
  c.demo = ml_collections.ConfigDict()
  c.crop_size = 513
  c.scale_range = (0.5, 2.0)
  c.flip = True
  c.blur_prob = 0.0
  c.worker_count = 0
  c.eval_batch_size = 4
  # The eval protocol (potts_jax.train.eval_dataset), named in the protocol
  # string logged with every number: "full" (every image at its own size,
  # unpadded: exact; one compilation per distinct image shape),
  # "center_crop" (rloss's FixScaleCrop(eval_crop_size): short side resized
  # to it, the centre square scored) or "padded" (zeros to eval_pad_to, or to
  # each batch's largest image: the padding enters the network).
  c.eval_protocol = "full"
  c.eval_crop_size = 513  # eval_protocol=center_crop
  c.eval_pad_to = ()  # eval_protocol=padded: e.g. (512, 512); () = batch max

  # Network (potts_jax/models/deeplabv3plus.py).
  c.model = ml_collections.ConfigDict()
  c.model.backbone = "mobilenet_v2"
  c.model.width = 1.0
  c.model.output_stride = 16
  c.model.channels = 256
  c.model.low_level_channels = 48
  c.model.dropout_rate = 0.1
  c.model.sync_bn = True
  c.model.pretrained_dir = ""  # `python -m potts_jax.pretrained convert` output

  # Optimiser: SGD momentum, weight decay, poly decay, head lr x10.
  c.batch_size = 12
  c.total_steps = 1000
  c.lr = 0.007
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.poly_power = 0.9
  c.head_lr_mult = 10.0
  # What the lr is measured against (potts_jax.losses.normalization_scale):
  # "pixel_mean", every loss term a mean over the counted pixels of the global
  # batch; "batch_mean", those means divided by the global batch size B, the
  # loss of the paper's code lineage (rloss / pytorch-deeplab-xception:
  # CrossEntropyLoss(batch_average=True), DenseCRF loss / n), for which its
  # lr 0.007 / 0.0007 were set. A batch_mean step at lr η equals a pixel_mean
  # step at lr η/B with weight decay B·wd. The default is pixel_mean, the
  # units the demo and CamVid configs were tuned in; the paper configs (voc,
  # voc_r101, cityscapes, ade20k) set batch_mean.
  c.loss_normalization = "pixel_mean"

  # Method and loss (potts_jax/steps.py).
  c.method = "pce"  # pce | gd | soft_sl | hard_sl | hard_sl_gc (steps.METHODS)
  c.full_supervision = False  # train on the dense masks (upper bound)
  c.relaxation = "cd"
  c.cross_entropy = "cce"
  c.neighborhood = "nn4"
  c.eta = 0.3
  c.lam = 6.0
  c.sigma_rgb = 9.0
  c.sigma_xy = 100.0  # spatial bandwidth (pixels) of neighborhood="dense"
  c.solver_steps = 200
  c.solver_step_size = 0.075
  # The y-solver's update (potts_jax.updates): gd (the paper's), adam (optax
  # Adam on the logits at solver_adam_lr), mirror, mirror_momentum.
  c.solver_method = "gd"
  c.solver_adam_lr = 0.1
  # "coarse": start the solver from solver_warm_start_steps steps on the
  # 2x2-pooled problem (potts_jax.warm_start; grid neighbourhoods only).
  c.solver_warm_start = ""
  c.solver_warm_start_steps = 25
  c.dense_scale_factor = 1.0  # neighborhood=dense filters at this fraction
  # Static lattice slots per image of neighborhood=dense; 0 = the safe bound
  # 6N. Fewer slots filter faster (real crops need 2-13% of N at 513²):
  # choose with potts_jax.bilateral.choose_capacity on a few batches. An
  # overflow stops the run with an error naming this key.
  c.dense_capacity = 0
  c.init_from = ""  # a stage-1 workdir or checkpoint
  c.stages = ()  # e.g. ({"name": "stage1", "method": "pce"}, {...})
  c.name = ""

  # Loop.
  c.log_every = 50
  c.image_every = 0
  c.eval_every = 0
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.eval_scales = (1.0,)
  c.eval_flip = False
  c.figure = False  # write WORKDIR/figure.png (image, GT, y, prediction)
  return c
