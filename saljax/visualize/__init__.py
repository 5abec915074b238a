"""Feature visualization and fooling images (issue 17, parts 4 and 5).

- Activation maximization of classes, channels, neurons and directions with a
  Fourier parameterization and decorrelated colour (Olah et al. 2017), MaCo
  (Fel et al. 2023), multifaceted feature visualization (Nguyen et al. 2016):
  `saljax.visualize.activation`.
- Fooling images by gradient ascent and by MAP-Elites with a direct and a CPPN
  encoding (Nguyen et al. 2015): `saljax.visualize.fooling`.

See docs/visualize.md.
"""
from saljax.visualize._image import (  # noqa: F401
    fourier_to_image, image_to_fourier, maco_to_image, natural_spectrum, random_transform)
from saljax.visualize.fooling import Evolution, evolve, fooling_gradient, train_digits_cnn  # noqa: F401
from saljax.visualize.activation import (  # noqa: F401
    Facets, Objective, Result, Transforms, channels, classes, directions, embed, kmeans, maco,
    maximize, multifaceted, neurons, pairwise_distance, transformed_scores)
