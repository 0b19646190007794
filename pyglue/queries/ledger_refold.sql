-- Store again the item histories that a bulk write left to be folded on read.
select billing.refold_item_histories() as refolded
