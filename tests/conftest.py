import os

# Keras freezes its backend on first import, and ray.rllib imports TensorFlow -> Keras.
os.environ.setdefault("KERAS_BACKEND", "torch")
