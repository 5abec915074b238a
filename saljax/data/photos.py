"""The bundled real photos that ship with scikit-image and scikit-learn."""
