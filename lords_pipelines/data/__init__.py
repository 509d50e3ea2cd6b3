"""The shipped texts and data sets (corpora, fine-tuning tasks) and the code that rebuilds them."""
