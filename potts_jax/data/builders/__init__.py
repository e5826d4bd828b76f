"""TFDS builders (array_record, no TensorFlow): ``voc_builder`` VOC +
ScribbleSup, ``folder_builder`` a folder of photos and scribbles,
``block_builders`` Cityscapes / ADE20k with block scribbles (their label
conversions in ``block_labels``), ``demo_builder`` the generated demo;
``builder_base`` what they share."""
