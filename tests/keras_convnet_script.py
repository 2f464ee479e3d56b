"""keras.io's "Simple MNIST convnet" (fchollet), with only its imports changed to dpnn's.

Two more changes, each marked: the arrays come from Fashion-MNIST (or dpnn's synthetic digits
where it is not installed) instead of ``keras.datasets``, and the sample and epoch counts come
from the environment so that a test can run it small (KERAS_SCRIPT_SAMPLES, KERAS_SCRIPT_EPOCHS).
"""
import os

import numpy as np

import dpnn as keras  # was: import keras
from dpnn import layers  # was: from keras import layers


def load_data(n_train, n_test):   # was: keras.datasets.mnist.load_data()
    from dpnn.datasets import load_dataset
    name = "fashion-mnist" if os.path.isdir("/usr/share/datasets/fashion-mnist") else "synthetic"
    train, test, _ = load_dataset(name)
    as_uint8 = lambda d, n: ((d.X[:n, ..., 0] * 255).round().astype(np.uint8), d.y[:n])  # noqa: E731
    return as_uint8(train, n_train), as_uint8(test, n_test)


n_samples = int(os.environ.get("KERAS_SCRIPT_SAMPLES", 60000))

# Model / data parameters
num_classes = 10
input_shape = (28, 28, 1)

# Load the data and split it between train and test sets
(x_train, y_train), (x_test, y_test) = load_data(n_samples, n_samples // 2)

# Scale images to the [0, 1] range
x_train = x_train.astype("float32") / 255
x_test = x_test.astype("float32") / 255
# Make sure images have shape (28, 28, 1)
x_train = np.expand_dims(x_train, -1)
x_test = np.expand_dims(x_test, -1)
print("x_train shape:", x_train.shape)
print(x_train.shape[0], "train samples")
print(x_test.shape[0], "test samples")


# convert class vectors to binary class matrices
y_train = keras.utils.to_categorical(y_train, num_classes)
y_test = keras.utils.to_categorical(y_test, num_classes)

model = keras.Sequential(
    [
        keras.Input(shape=input_shape),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ]
)

model.summary()

batch_size = 128
epochs = int(os.environ.get("KERAS_SCRIPT_EPOCHS", 15))   # was: epochs = 15

model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])

model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_split=0.1)

score = model.evaluate(x_test, y_test, verbose=0)
print("Test loss:", score[0])
print("Test accuracy:", score[1])
