"""Online store writers in Feast's layouts: a fast Redis path and Feast's own writer for the rest."""
