"""BlockMNIST (Shah, Jain, Netrapalli 2021) built from scikit-learn digits."""
