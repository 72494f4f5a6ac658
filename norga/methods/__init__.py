"""Learning procedures: each method is one file (its stages) plus ``conf/method/<name>.yaml``."""
