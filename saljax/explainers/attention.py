"""ViT methods: attention rollout, ViT Grad-CAM, class-token attention maps."""
