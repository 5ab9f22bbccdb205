# One job per dataset: dvc checkout/pull, else mirror/canonical download + verify + dvc add/push.
# The marker says whether the dataset is available; a checksum mismatch fails the job.


localrules: dataset


rule dataset:
    output:
        LAYOUT.dataset_marker("{name}"),
    log:
        LAYOUT.dataset_log("{name}"),
    shell:
        "{SR} data {wildcards.name} --marker {output} 2> {log}"
