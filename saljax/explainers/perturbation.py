"""Black-box perturbation methods: occlusion, RISE, LIME, KernelSHAP, Shapley sampling, extremal perturbation, Sobol, HSIC."""
