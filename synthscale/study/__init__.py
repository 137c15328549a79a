"""The study: grid runs, the results store, scaling-law fits, plots and the report. Import the module you need
(`synthscale.study.results`, `.scaling`, `.plots`, `.report`); nothing is imported here, so opening the store does
not load matplotlib."""
