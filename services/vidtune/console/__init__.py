"""The web console: one dashboard over the services (jobs live, dataset statistics, rejected rows,
training curves, evaluation side by side, actions). It owns no state: job records come from each
service's JobService, stage outputs from the object store, and actions go through the Submit RPCs."""
