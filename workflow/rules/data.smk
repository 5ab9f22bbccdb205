# One job per dataset: dvc checkout/pull, else mirror/canonical download + verify + dvc add/push.
# The marker says whether the dataset is available; a checksum mismatch fails the job.


localrules: dataset


rule dataset:
    output:
        LAYOUT.dataset_marker("{name}"),
    # before everything: a fetch takes seconds and unlocks every run that reads the dataset (at the
    # default priority 0 the MNIST fetch waited 5 minutes behind Fashion-MNIST training jobs, and
    # Hinton et al.'s teacher chain with it)
    priority: 10**8
    log:
        LAYOUT.dataset_log("{name}"),
    shell:
        "{SR} data {wildcards.name} --marker {output} 2> {log}"
