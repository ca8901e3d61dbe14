"""felix-nat64's nftables table: steering, refusals, protection and SNAT."""
