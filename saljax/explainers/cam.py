"""Class activation maps on tapped layers: Grad-CAM, Grad-CAM++, XGrad-CAM, Layer-CAM, HiRes-CAM, Eigen-CAM, Score-CAM, NormGrad."""
