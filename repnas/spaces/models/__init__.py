"""Model families; importing this package registers them all (e2cnn is imported lazily)."""

from repnas.spaces.models import _gcnn, _resnet, _rotmnist, _vgg, _wrn  # noqa: F401
