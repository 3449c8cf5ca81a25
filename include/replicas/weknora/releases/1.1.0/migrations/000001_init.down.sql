DROP TABLE knowledges;
DROP TABLE knowledge_bases;
DROP TABLE tenants;
