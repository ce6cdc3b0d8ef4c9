"""The card-payment fraud example: its data generator, demo and labelled entity table. The product never imports it."""
