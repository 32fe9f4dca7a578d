"""AlexNet (Krizhevsky et al. 2012), single tower, with its own recipe (the baseline of paper §4.5, Table 7).

    python -m vgg_jax.main --config experiments/alexnet.py --workdir workdirs/alexnet

The VGG paper's baseline: SGD batch 128, momentum 0.9, weight decay 5e-4,
lr 0.01 divided by 10 when validation accuracy stops improving (3 times),
about 90 epochs; weights N(0, 0.01), biases 1 in conv2, conv4, conv5 and the
hidden FC layers, 0 elsewhere (``init="alexnet"``); dropout 0.5 on FC1/FC2;
random 224 crops of the central 256x256 square of the image rescaled to
shorter side 256 (``data.central_square``, Krizhevsky's input), flips, PCA
lighting (sigma 0.1), minus Krizhevsky's per-pixel mean image
(``data.mean_image``: each crop minus the window of the mean image under it,
flipped with it; vgg_jax/mean_image.py) instead of the mean RGB.  Compute
the mean image of the training split once (one pass, every image;
undecodable ones are named):

    python -m vgg_jax.data stats --source tfds --name imagenet2012 \
        --data_dir DIR --output stats/imagenet2012_stats.json \
        --mean_image stats/imagenet2012_mean_image.npy

(elsewhere: ``--config.data.mean_image=FILE``; ``=''`` subtracts the mean
RGB instead).  The path is recorded with the model, so evaluation subtracts
the same mean.

Paper (ILSVRC-2012 val, 1 net, 10-crop test): 40.7 / 18.2 top-1 / top-5
error %.  The training-time evaluation here is a single centre crop at 256
(expect a few points worse).  The 10-crop test (the four corner and the
centre 224 crops of the central 256x256 square and their flips, soft-max
averaged):

    python -m vgg_jax.evaluate --model workdirs/alexnet --best \
        --protocol tencrop --scales 256

Cost: 1.135 GMACs per 224 image forward, about 6.8 GFLOP per training
image; 90 epochs x 1.281M = 115M images = 7.9e17 FLOP, under an
accelerator-hour at a sustained 300 TFLOP/s; in practice bound by JPEG
decoding (~44,000 images/s would be needed to keep up), so budget by the
input pipeline.  Krizhevsky et al.: 5-6 days on two GTX 580 GPUs.
"""

from vgg_jax import configs as common


def get_config(arg: str | None = None):
  del arg
  c = common.base_config("tfds")
  c.model.name = "alexnet"
  c.model.init = "alexnet"
  c.optimizer.decay_biases = False  # Krizhevsky et al. decay weights only
  c.batch_size = 128
  c.eval_batch_size = 256
  c.lr = 1e-2
  c.total_epochs = 90.0
  c.data.train_scale = 256
  c.data.eval_scale = 256
  c.data.pca_std = 0.1
  c.data.central_square = True  # Krizhevsky's crops: the central square
  # Krizhevsky's per-pixel mean image (computed by the command above).
  c.data.mean_image = "stats/imagenet2012_mean_image.npy"
  return common.lock(c)
