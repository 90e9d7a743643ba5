"""Training-speed levers on plain-Keras BatchNorm and residual nets (issue 10's 1.3x goal).

    .venv/bin/python tools/investigations/levers_bn_resnet.py                         # every net x lever
    .venv/bin/python tools/investigations/levers_bn_resnet.py --nets bn6 --levers fp32-b128,bf16-b128 \
        --steps 20

The BatchNorm and residual model families arrive with issue 12; until then these two nets stand
in for them (the same shapes as in the issue: a 6-conv BatchNorm net of 73 K parameters and a
16-32-64 ResNet of 176 K), built from stock Keras layers. Each lever runs in a fresh process
(environment variables, thread counts and policies are fixed per process): it trains `--steps`
steps after `--warmup` steps through `model.fit` on real Fashion-MNIST images, so the input
pipeline is in the loop, and reports seconds per 54,000-image epoch (steps timed from the first
to the last batch end: no tracing, no warm-up) and the ratio to the net's fp32-b128 baseline.
Timings on a shared machine are noisy: the load average is printed with each row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EPOCH_IMAGES = 54_000
# name -> (mixed precision, batch, extra environment, options)
LEVERS: dict[str, tuple[str, int, dict[str, str], dict[str, object]]] = {
    "fp32-b128": ("off", 128, {}, {}),
    "bf16-b128": ("bf16", 128, {}, {}),
    "fp32-b256": ("off", 256, {}, {}),
    "bf16-b256": ("bf16", 256, {}, {}),
    "bf16-b512": ("bf16", 512, {}, {}),
    "fp32-b128-onednn-off": ("off", 128, {"TF_ENABLE_ONEDNN_OPTS": "0"}, {}),
    "bf16-b128-nchw": ("bf16", 128, {}, {"channels_first": True}),
    "fp32-b128-xla": ("off", 128, {}, {"jit_compile": True}),
    "bf16-b128-xla": ("bf16", 128, {}, {"jit_compile": True}),
    "bf16-b128-numpy-input": ("bf16", 128, {}, {"input": "numpy"}),
    "bf16-b128-intra2-inter1": ("bf16", 128, {}, {"threads": (2, 1)}),
    "fp32-b128-fused-bn": ("off", 128, {}, {"fused_bn": True}),
    "bf16-b128-fused-bn": ("bf16", 128, {}, {"fused_bn": True}),
    "bf16-b256-fused-bn-numpy-input": ("bf16", 256, {}, {"fused_bn": True, "input": "numpy"}),
}
NETS = ("bn6", "resnet16")


def _bn(x, fused: bool = False):
    """BatchNorm over the channel axis (axis 1 under channels_first)."""
    import keras
    from keras import layers

    axis = 1 if keras.config.image_data_format() == "channels_first" else -1
    return (_fused_bn_class()(axis=axis) if fused else layers.BatchNormalization(axis=axis))(x)


def _fused_bn_class():
    """Keras' BatchNormalization whose training step is TensorFlow's fused kernel
    (FusedBatchNormV3, which oneDNN implements) instead of Keras 3's moments + normalize ops;
    inference is unchanged. A lever to measure, not a layer the toolkit saves."""
    import keras
    import tensorflow as tf

    class FusedBatchNorm(keras.layers.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            if not training or self.axis not in (-1, 3, 1) or len(inputs.shape) != 4:
                return super().call(inputs, training=training, mask=mask)
            fmt = "NCHW" if self.axis == 1 else "NHWC"
            x = tf.cast(inputs, "float32") if inputs.dtype == tf.bfloat16 else inputs
            y, mean, var, *_ = tf.raw_ops.FusedBatchNormV3(
                x=x, scale=self.gamma, offset=self.beta, mean=tf.zeros_like(self.moving_mean),
                variance=tf.ones_like(self.moving_variance), epsilon=self.epsilon, data_format=fmt,
                is_training=True)
            momentum = self.momentum
            self.moving_mean.assign(self.moving_mean * momentum + mean * (1 - momentum))
            self.moving_variance.assign(self.moving_variance * momentum + var * (1 - momentum))
            return tf.cast(y, inputs.dtype)

    return FusedBatchNorm


def _cbr(x, filters: int, stride: int = 1, fused: bool = False):
    from keras import layers

    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    return layers.ReLU()(_bn(x, fused))


def build(net: str, channels_first: bool = False, fused: bool = False):
    """bn6: cbr 16,16 / pool / 32,32 / pool / 64,64 / GAP (73 K params); resnet16: stem 16, three
    stages of two basic blocks at 16, 32, 64 (stride 2 between stages) / GAP (176 K params)."""
    import keras
    from keras import layers

    inputs = keras.Input((28, 28, 1), name="image")
    x = layers.Permute((3, 1, 2))(inputs) if channels_first else inputs
    if net == "bn6":
        for i, width in enumerate((16, 32, 64)):
            if i:
                x = layers.MaxPooling2D()(x)
            x = _cbr(_cbr(x, width, fused=fused), width, fused=fused)
    else:
        x = _cbr(x, 16, fused=fused)
        for stage, width in enumerate((16, 32, 64)):
            for block in range(2):
                stride = 2 if stage and not block else 1
                shortcut = x
                y = _cbr(x, width, stride, fused=fused)
                y = _bn(layers.Conv2D(width, 3, padding="same", use_bias=False)(y), fused)
                if stride != 1 or shortcut.shape[-1 if not channels_first else 1] != width:
                    shortcut = _bn(layers.Conv2D(width, 1, strides=stride, use_bias=False)(shortcut), fused)
                x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D(name="embedding")(x)
    outputs = layers.Dense(10, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=net)


def measure(net: str, lever: str, steps: int, warmup: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from toolkit.core import data
    from toolkit.training import precision

    mode, batch, _, options = LEVERS[lever]
    if "threads" in options:
        intra, inter = options["threads"]
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    if options.get("channels_first"):
        keras.config.set_image_data_format("channels_first")
    keras.utils.set_random_seed(0)
    with precision.policy_scope(precision.resolve(mode)):
        model = build(net, bool(options.get("channels_first")), bool(options.get("fused_bn")))
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"],
                      jit_compile=bool(options.get("jit_compile")))
    dataset = data.load()
    n = batch * (steps + warmup)
    x, y = data.to_model_input(dataset.x_train[:n]), dataset.y_train[:n].astype(np.int32)
    ends: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch_index, logs: ends.append(time.perf_counter()))
    if options.get("input") == "numpy":
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=True, verbose=0, callbacks=[timer])
    else:  # the toolkit's pipeline: in-memory tensors, a shuffled index stream, gather per batch
        xt, yt = tf.constant(x), tf.constant(y)
        ds = (tf.data.Dataset.from_tensor_slices(tf.random.shuffle(tf.range(n), seed=0)).batch(batch)
              .map(lambda i: (tf.gather(xt, i), tf.gather(yt, i))).prefetch(tf.data.AUTOTUNE))
        model.fit(ds, epochs=1, verbose=0, callbacks=[timer])
    timed = ends[warmup:]
    per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
    return {"net": net, "lever": lever, "params": int(model.count_params()), "batch": batch,
            "images_per_s": batch / per_step, "s_per_epoch": EPOCH_IMAGES / (batch / per_step),
            "load_avg": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--levers", default=",".join(LEVERS))
    parser.add_argument("--steps", type=int, default=30, help="timed steps per lever")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--child", nargs=2, metavar=("NET", "LEVER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.steps, args.warmup)))
        return 0
    rows = []
    print("| net | lever | params | batch | img/s | s/epoch | vs fp32-b128 | load 1m |")
    print("|---|---|---|---|---|---|---|---|")
    for net in args.nets.split(","):
        base = None
        for lever in args.levers.split(","):
            env = {**os.environ, **LEVERS[lever][2]}
            cmd = [sys.executable, __file__, "--child", net, lever, "--steps", str(args.steps),
                   "--warmup", str(args.warmup)]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode or not lines:
                print(f"| {net} | {lever} | failed: {done.stderr.strip().splitlines()[-1:]} |||||")
                continue
            row = json.loads(lines[-1])
            rows.append(row)
            base = row["s_per_epoch"] if lever == "fp32-b128" else base
            ratio = f"{base / row['s_per_epoch']:.2f}x" if base else "-"
            print(f"| {net} | {lever} | {row['params']:,} | {row['batch']} | {row['images_per_s']:,.0f} | "
                  f"{row['s_per_epoch']:.1f} | {ratio} | {row['load_avg'][0]:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
