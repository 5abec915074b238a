"""Modified backward rules via jax.custom_vjp: guided backprop, deconvnet, DeepLIFT (rescale), LRP."""
