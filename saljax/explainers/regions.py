"""Region methods: XRAI, LiMA / submodular subset selection."""
