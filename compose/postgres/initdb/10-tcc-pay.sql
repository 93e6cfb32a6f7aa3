-- The four services' databases: each service owns its own (DESIGN §1), on one server here.
CREATE DATABASE tcc_coordinator;
CREATE DATABASE tcc_order;
CREATE DATABASE tcc_payment;
CREATE DATABASE tcc_inventory;
